import io

from explain.progress import StageBars


def test_one_bar_per_stage_on_the_given_stream():
    out = io.StringIO()
    bars = StageBars(out)
    for f in (0.0, 0.25, 0.5, 1.0):  # download stage, finished
        bars(f"p: downloading x ({f:.0%})", f)
    assert bars.bar is None  # a finished stage closes its bar
    bars("p: checking sha256 (1/2)", 0.0)
    bars("p: checking sha256 (2/2)", 0.5)
    first = bars.bar
    bars("p: converting", 0.0)  # a lower fraction: the next stage gets a new bar
    assert bars.bar is not first
    bars.close()
    text = out.getvalue()
    assert "p: downloading x (50%)" in text and "100%" in text
    assert "p: checking sha256 (2/2)" in text and " 50%" in text and "p: converting" in text
