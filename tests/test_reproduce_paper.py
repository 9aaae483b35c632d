"""bench/reproduce_paper.py's bookkeeping: which cached cells still describe their method (the numbers are the
benchmark's to report, docs/results.md)."""
import pytest

from fp_onnx.methods import METHODS


@pytest.fixture(scope="module")
def benchmark(bench_module):
    return bench_module("reproduce_paper")


def cached(method: str, *recipes: str, suspect: int | None = None, checked: bool = True) -> dict:
    recover = {"recover_attempts": [{"recipe": r} for r in recipes]}
    if checked:
        recover["warp_check"] = {"suspect_class": suspect}
    return {"method": method, "recover": recover}


def test_the_recipe_order_is_the_methods_cascade_with_the_fallbacks_twice(benchmark):
    first, second, *fallbacks = METHODS["recommended"].recover
    assert benchmark.recipe_order("recommended") == [first, second, *fallbacks, *fallbacks]
    assert benchmark.recipe_order("paper") == ["paper"]
    assert benchmark.recipe_order("recover:cosine") == ["cosine"]


def test_a_cell_that_tried_another_recipe_is_stale_and_a_prefix_of_the_cascade_is_current(benchmark):
    order = benchmark.recipe_order("recommended")
    assert benchmark.is_current(cached("recommended", order[0]))  # shipped by the first attempt
    assert benchmark.is_current(cached("recommended", *order))  # every attempt, in order
    assert not benchmark.is_current(cached("recommended", order[0], "a-recipe-it-no-longer-tries"))
    assert not benchmark.is_current(cached("recommended", *order[1:]))  # same recipes, another order
    assert not benchmark.is_current(cached("recommended", *order, "paper"))  # more attempts than it makes


def test_a_cell_is_judged_against_the_cascade_its_warp_check_chose(benchmark):
    order, warp = benchmark.recipe_order("recommended"), list(METHODS["recommended"].warp_recipes)
    assert warp and benchmark.recipe_order("recommended", warp_suspected=True) == warp + order
    assert benchmark.is_current(cached("recommended", *warp, suspect=0))  # flagged: the warp recipe first
    assert benchmark.is_current(cached("recommended", *warp, order[0], suspect=4))
    assert not benchmark.is_current(cached("recommended", order[0], suspect=0))  # flagged, yet no warp attempt
    assert not benchmark.is_current(cached("recommended", *warp, suspect=None))  # a warp attempt unflagged
    assert benchmark.is_current(cached("recommended", order[0], checked=False))  # cached before the check


def test_stale_cells_are_marked_in_the_tables_and_counted(benchmark, monkeypatch, tmp_path):
    monkeypatch.setattr(benchmark, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    row = {"clean_accuracy": 0.9, "attack_success": 0.01}
    runs = []
    for model, recipes in (("current", ["adversarial"]), ("earlier", ["adversarial", "an-earlier-second-recipe"])):
        for seed in (0, 1):
            run = {**cached("recommended", *recipes), "model": model, "seed": seed, "seconds": 1.0,
                   "table": {"none": row, "fine-pruning": row}, "finetune": {"failure": None}}
            runs.append(run)
    benchmark.write_results(runs, ["recommended"], None)
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| current | 0.900 / 0.010 | **0.900 / 0.010** |" in text
    assert "| earlier | 0.900 / 0.010 | **0.900 / 0.010** ‡ |" in text
    assert "recommended 2/2 (‡: 1)" in text and benchmark.STALE_NOTE in text
    assert "| earlier | recommended | 0, 1 |" in text and text.count("2/2 ‡ |") == 1
