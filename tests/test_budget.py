import pytest

from lipbench.budget import load_budget, parse_duration, preset_names
from lipbench.errors import UserError


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("2m", 120), ("1h30m", 5400), ("10h", 36000),
                                           ("1.5h", 5400), ("90", 90), ("1d", 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["abc", "2x", "", "-1s", "0s", "h2"])
def test_malformed_durations_say_what_to_write(text):
    with pytest.raises(UserError, match="budget"):
        load_budget(text)


def test_paper_presets_ship_and_carry_the_protocol():
    assert {"2h", "10h", "24h", "cpu-2m"} <= set(preset_names())
    budget = load_budget("10h")
    assert budget.seconds == 36000 and budget.protocol["batch_size"] == 256
    assert budget.protocol["offset"] == pytest.approx(0.3993)
    assert budget.per_method["aol@XS"]["lr"] == pytest.approx(0.0573, rel=1e-3)


def test_a_preset_runs_for_another_duration():
    budget, preset = load_budget("cpu-2m@1m"), load_budget("cpu-2m")
    assert budget.name == "cpu-2m@1m" and budget.seconds == 60
    assert budget.protocol == preset.protocol and budget.per_method == preset.per_method
    with pytest.raises(UserError, match="no preset"):
        load_budget("2m@1m")
    with pytest.raises(UserError, match="malformed budget"):
        load_budget("cpu-2m@soon")


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("budget: 2m\nlr: [0.1\n")
    with pytest.raises(UserError, match=r"mine.yaml is not valid YAML at line \d"):
        load_budget(str(path))


@pytest.mark.parametrize("content, message", [("lr: 0.1\n", "budget"), ("budget: 2m\nlearning_rate: 1\n", "unknown keys"),
                                              ("budget: 2m\nbatch_size: many\n", "batch_size must be an integer"),
                                              ("budget: 2m\nmethods:\n  aol: {budget: 2h}\n", "methods.aol.*unknown setting"),
                                              ("budget: 2m\nmethods: [aol]\n", "methods")])
def test_invalid_presets_are_explained(tmp_path, content, message):
    path = tmp_path / "p.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_budget(str(path))
