"""Typed identifiers: the same ``str`` at run time, distinct types to the type checker, so a
buyer id cannot be passed where a call id is expected. Ids are branded where they enter
(an authenticated account, a generated call id, a decoded request id)."""

from __future__ import annotations

from typing import NewType

AccountId = NewType("AccountId", str)
BuyerId = NewType("BuyerId", str)
PublisherId = NewType("PublisherId", str)
CampaignId = NewType("CampaignId", str)
CallId = NewType("CallId", str)
RequestId = NewType("RequestId", str)  # one bid_request of an RTB round: "<call id>.<n>"

__all__ = ["AccountId", "BuyerId", "PublisherId", "CampaignId", "CallId", "RequestId"]
