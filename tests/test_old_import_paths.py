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
    "probdyn.models.sysid_ode": "probdyn.sde.ode",
    "probdyn.observations": "probdyn.inference.gaussian_filters.observations",
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


def test_deprecated_ode_solve_is_solve_ode_with_the_old_argument_order():
    import diffrax
    import jax.numpy as jnp
    import numpy as np

    from probdyn.models import sysid
    from probdyn.sde import solve_ode

    th, z0, ts = jnp.array([0.55, 0.028, 0.8, 0.024]), jnp.array([34.0, 6.0]), jnp.arange(6.0)
    for solver, backend in ((None, "fused_rk"), (diffrax.Kvaerno5(), "diffrax")):
        with pytest.warns(DeprecationWarning, match="probdyn.sde.solve_ode"):
            z, ok = sysid.ode_solve(sysid.lotka_volterra_drift, th, z0, ts, solver=solver)
        z_new, ok_new = solve_ode(sysid.lotka_volterra_drift, z0, ts, th, solver=solver, backend=backend)
        assert bool(ok) and bool(ok_new)
        np.testing.assert_array_equal(np.asarray(z), np.asarray(z_new))


def test_filter_distributions_old_names_warn():
    import probdyn.distributions as old
    from probdyn.inference import gaussian_filters as gf

    for name in ("SDEFilterDistribution", "DiscreteFilterDistribution"):
        with pytest.warns(DeprecationWarning, match=rf"probdyn\.inference\.gaussian_filters\.{name}"):
            assert getattr(old, name) is getattr(gf, name)


def test_gaussian_filter_result_old_names_warn():
    from probdyn.inference import gaussian_filters as gf

    for name in ("FilterResult", "SmootherResult"):
        with pytest.warns(DeprecationWarning, match=f"Gaussian{name}"):
            assert getattr(gf, name) is getattr(gf, f"Gaussian{name}")
