"""Old import location, kept so code written against it still imports: the contract moved to ``vlpeft._protocol``
(it imports nothing of the project) and the site-placing helpers to ``vlpeft.backbones._sites``. New code imports
from those two."""

from vlpeft._protocol import (ANCHORS, PLAIN_POLICIES, PROJ_ANCHORS, Backbone, Candidates, LayerPlan, Site,
                              is_scoped_policy)
from vlpeft.backbones._sites import (attach_projection, attach_skip, base_policy_params, is_norm_param,
                                     projection_sites, scoped_policy_params)

policy_params = base_policy_params  # its old name here (``vlpeft.pet.unfreeze`` had a second ``policy_params``)

__all__ = ["ANCHORS", "PLAIN_POLICIES", "PROJ_ANCHORS", "Backbone", "Candidates", "LayerPlan", "Site",
           "attach_projection", "attach_skip", "base_policy_params", "is_norm_param", "is_scoped_policy",
           "policy_params", "projection_sites", "scoped_policy_params"]
