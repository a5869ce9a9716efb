"""claim.py's summary: the gains it prints are the differences of the reports'
overall scores, per seed, for the main run and each arm that ran."""
import pytest

from gvu_jax.tools import claim


def report(before, after, gvu_before, gvu_after, und=(0.5, 0.5)):
  stage = lambda g, p, u: {"generation": {"overall": g}, "generation_gvu_prompts": {"overall": p},
                           "understanding": {"overall": u}}
  return {"pretrained": stage(before, gvu_before, und[0]), "gvu": stage(after, gvu_after, und[1])}


@pytest.mark.parametrize("with_ceiling", [False, True])
def test_gains_are_the_differences_of_the_reports(with_ceiling):
  runs = []
  for seed, shift in enumerate((0.0, 0.1)):
    run = {"seed": seed,
           "main": report(0.5 + shift, 0.55 + shift, 0.4, 0.6, und=(0.7, 0.69)),
           "control": report(0.5 + shift, 0.49 + shift, 0.4, 0.41)}
    if with_ceiling:
      run["ceiling"] = report(0.5 + shift, 0.6 + shift, 0.4, 0.8)
    runs.append(run)
  s = claim.summarize(runs)
  assert s["generation gain (points)"]["per_seed"] == pytest.approx([5.0, 5.0])
  assert s["control gain (points)"]["per_seed"] == pytest.approx([-1.0, -1.0])
  assert s["GvU-prompt gain (points)"]["per_seed"] == pytest.approx([20.0, 20.0])
  assert s["GvU-prompt control gain (points)"]["per_seed"] == pytest.approx([1.0, 1.0])
  assert s["understanding change (points)"]["mean"] == pytest.approx(-1.0)
  assert s["generation before"]["per_seed"] == pytest.approx([0.5, 0.6])
  if with_ceiling:
    assert s["ceiling gain (points)"]["per_seed"] == pytest.approx([10.0, 10.0])
    assert s["GvU-prompt ceiling gain (points)"]["mean"] == pytest.approx(40.0)
  else:
    assert not [name for name in s if "ceiling" in name]
  table = claim.markdown(s, [0, 1]).splitlines()
  assert len(table) == 2 + len(s)
  assert "| GvU-prompt gain (points) | +20.0 | +20.0 | 20.0 ± 0.0 |" in table
