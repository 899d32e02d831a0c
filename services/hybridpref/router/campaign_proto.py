"""A campaign's correction model on the wire (``CampaignModelInfo``), for both servicers: the routing summary's
``campaign.model`` and ``GetCampaign``'s ``model``."""

from __future__ import annotations

from typing import Any

from hybridpref.v1 import router_pb2


def campaign_model_to_proto(info: dict[str, Any]) -> router_pb2.CampaignModelInfo:
    """``CampaignModel.describe()`` -> ``CampaignModelInfo``."""
    proposal = info.get("proposal", {})
    out = router_pb2.CampaignModelInfo(
        version=info["version"], base_version=info["base_version"], adapted=info["adapted"], labels=int(info["labels"])
    )
    for field, value in (
        ("heldout_log_loss", proposal.get("heldout_loss")),
        ("bundle_log_loss", proposal.get("bundle_loss")),
        ("human_error_rate", info.get("human_rate")),
    ):
        if value is not None:
            setattr(out, field, float(value))
    return out
