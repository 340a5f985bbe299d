"""The policy file: loading, ${ENV} interpolation, validation and the typed snapshot the addons read."""

from kaixu.config.loader import PolicyError, Problem, load_policy, parse_policy
from kaixu.config.policy import ModelRoute, Policy, ProviderConfig, RouteTarget, VirtualKey

__all__ = [
    "ModelRoute",
    "Policy",
    "PolicyError",
    "Problem",
    "ProviderConfig",
    "RouteTarget",
    "VirtualKey",
    "load_policy",
    "parse_policy",
]
