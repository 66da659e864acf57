"""The compliance gate (pure, compiled from versioned rule data) and the stores it reads."""
