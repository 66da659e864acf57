"""Capacity and order, pure: schedules, caps, concurrency, budgets, dedupe, eligibility."""
