"""Old module paths of the model families keep working for one release: each is a thin
re-export of its new home that emits a DeprecationWarning naming the new path."""

import importlib
import sys

import pytest

OLD_TO_NEW = {
    "probdyn.models.sysid_systems": "probdyn.models.sysid.systems",
    "probdyn.models.mgpvae_nets": "probdyn.models.mgpvae.nets",
    "probdyn.models.fractional_sde": "probdyn.models.fractional",
    "probdyn.models.fractional_video": "probdyn.models.fractional.video",
    "probdyn.models.sparse_gp_sde": "probdyn.models.sde_posteriors",
    "probdyn.models.sparse_gp_sde_bridges": "probdyn.models.sde_posteriors.bridges",
    "probdyn.models.vgpa": "probdyn.models.sde_posteriors.vgpa",
    "probdyn.models.sde_data": "probdyn.models.sde_posteriors.observed",
    "probdyn.models.sde_drifts": "probdyn.models.sde_posteriors.drifts",
    "probdyn.models.sde_em": "probdyn.models.sde_posteriors.em",
}


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_path_warns_and_re_exports_the_new_module(old):
    new = importlib.import_module(OLD_TO_NEW[old])
    sys.modules.pop(old, None)  # a cached import would not warn again
    with pytest.warns(DeprecationWarning, match=OLD_TO_NEW[old].replace(".", r"\.")):
        mod = importlib.import_module(old)
    public = getattr(new, "__all__", None) or [n for n in vars(new) if not n.startswith("_")]
    assert public, f"{OLD_TO_NEW[old]} exports nothing"
    for name in public:
        assert getattr(mod, name) is getattr(new, name), f"{old}.{name} is not {OLD_TO_NEW[old]}.{name}"
