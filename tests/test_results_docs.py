"""README's study results are the files the studies wrote (docs/results/*.md), not hand-typed copies."""

from mdm import results_docs


def test_readme_results_are_current():
    readme = (results_docs.ROOT / "README.md").read_text()
    assert "<!-- results:" in readme, "README embeds no results file"
    assert results_docs.stale_blocks(readme) == [], "run: python -m mdm.results_docs --write"


def test_publish_and_embed(tmp_path):
    study, docs = tmp_path / "study", tmp_path / "docs"
    study.mkdir()
    (study / "results.md").write_text("# Label efficiency (dice)\n\n## Verdicts\n\n- At 0.1 labels: a ties b.\n")
    published = results_docs.publish("toy", study, "python -m mdm.benchmark --config X", docs)
    readme = "intro\n<!-- results:toy -->\nold numbers\n<!-- /results:toy -->\nend\n"
    assert results_docs.stale_blocks(readme, docs / "results") == ["toy"]
    fresh = results_docs.rewrite(readme, docs / "results")
    assert results_docs.stale_blocks(fresh, docs / "results") == []
    assert "#### Label efficiency (dice)" in fresh and "##### Verdicts" in fresh and "old numbers" not in fresh
    assert "Command: `python -m mdm.benchmark --config X`" in published.read_text()
    assert fresh.startswith("intro\n") and fresh.endswith("end\n")
