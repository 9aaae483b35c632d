"""The paper's criterion (§3.1): mean activation of each channel of one layer on clean data."""
from __future__ import annotations

from fp_onnx.profile import profile_model
from fp_onnx.ranking import ChannelRanking, RankingInputs, register_criterion


@register_criterion("activation")
def rank_by_activation(inputs: RankingInputs) -> ChannelRanking:
    """Channels of the default prune point in increasing order of mean activation (ties keep channel
    order), exactly as `fp_onnx.profile.ActivationProfile.pruning_order` gives them."""
    profile = profile_model(inputs.model, inputs.default, inputs.clean, options=inputs.options,
                            batch_size=inputs.batch_size, progress=inputs.progress)
    order = [(0, int(c)) for c in profile.pruning_order()]
    ranking = ChannelRanking("activation", [inputs.default], order, [profile.clean.mean_activation],
                             {"clean_accuracy": profile.clean.accuracy})
    ranking.profile = profile
    return ranking
