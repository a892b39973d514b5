import textwrap
from importlib.metadata import EntryPoint

import pytest
from torch import nn

import lipbench
from lipbench import registry


@pytest.fixture
def scratch_layer():
    names = []

    def register(name, **declaration):
        names.append(name)
        declaration = {"family": "test", "padding": "zero", "exact": True, **declaration}

        @lipbench.register_layer(name, **declaration)
        def build(kind, in_channels, out_channels, kernel_size=3, stride=1, scale=1.0):
            layer = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2) if kind == "conv" \
                else nn.Linear(in_channels, out_channels)
            layer.scale = scale
            return layer

        return build

    yield register
    for name in names:
        registry.unregister_layer(name)


def test_builtin_layers_register_through_the_public_decorator():
    assert {"aol", "standard"} <= set(lipbench.list_layers())
    assert lipbench.get_method("aol").build.__module__ == "lipbench.layers.aol"


def test_decorator_returns_the_factory_and_rejects_duplicates(scratch_layer):
    build = scratch_layer("zz-test")
    assert callable(build) and lipbench.get_method("zz-test").build is build
    with pytest.raises(ValueError, match="already registered"):
        scratch_layer("zz-test")


def test_list_layers_takes_wildcards_and_sorts(scratch_layer):
    scratch_layer("zz-b")
    scratch_layer("zz-a")
    assert lipbench.list_layers("zz-*") == ["zz-a", "zz-b"]
    assert lipbench.list_layers("zz-a,zz-b", exclude="*b") == ["zz-a"]
    assert lipbench.list_layers("nothing*") == []


def test_create_layer_drops_none_options_and_validates(scratch_layer):
    scratch_layer("zz-c", strides=(1,), kinds=("conv",))
    layer = lipbench.create_layer("zz-c", "conv", 3, 5, kernel_size=None, stride=None, scale=None)
    assert layer.kernel_size == (3, 3) and layer.scale == 1.0
    with pytest.raises(ValueError, match="stride"):
        lipbench.create_layer("zz-c", "conv", 3, 5, 3, stride=2)
    with pytest.raises(ValueError, match="linear"):
        lipbench.create_layer("zz-c", "linear", 3, 5)


def test_unknown_layer_names_the_name():
    with pytest.raises(lipbench.UserError, match="'nope'.*registered layers: .*aol"):
        lipbench.create_layer("nope", "conv", 3, 3)


def test_plugin_file_registers_and_a_broken_plugin_only_warns(tmp_path):
    good = tmp_path / "good_plugin.py"
    good.write_text(textwrap.dedent("""
        from torch import nn
        import lipbench

        @lipbench.register_layer("zz-plugin", family="test", padding="zero", exact=True, kinds=("linear",))
        def build(kind, in_channels, out_channels, kernel_size=None, stride=None):
            return nn.Linear(in_channels, out_channels)
    """))
    lipbench.load_plugin(str(good))
    try:
        assert "zz-plugin" in lipbench.list_layers()
    finally:
        registry.unregister_layer("zz-plugin")
    with pytest.raises(lipbench.UserError, match="--plugin no_such_module_anywhere failed to load"):
        lipbench.load_plugin("no_such_module_anywhere")
    with pytest.raises(lipbench.UserError, match="no such file"):
        lipbench.load_plugin(str(tmp_path / "missing.py"))


def test_a_plugin_that_fails_halfway_leaves_nothing_registered(tmp_path):
    halfway = tmp_path / "halfway_plugin.py"
    halfway.write_text(textwrap.dedent("""
        from torch import nn
        import lipbench

        @lipbench.register_layer("zz-first", family="test", padding="zero", exact=True, kinds=("linear",))
        def first(kind, in_channels, out_channels, kernel_size=None, stride=None):
            return nn.Linear(in_channels, out_channels)

        @lipbench.register_layer("aol", family="test", padding="zero", exact=True)
        def clash(kind, in_channels, out_channels, kernel_size=None, stride=None):
            return nn.Linear(in_channels, out_channels)
    """))
    with pytest.raises(lipbench.UserError, match="'aol' is already registered"):
        lipbench.load_plugin(str(halfway))
    assert "zz-first" not in lipbench.list_layers()
    assert lipbench.get_method("aol").build.__module__ == "lipbench.layers.aol"


def test_entry_point_plugins_load_lazily_and_failures_warn(monkeypatch):
    broken = EntryPoint(name="broken", value="no_such_module_xyz:thing", group=registry.LAYERS.group)
    monkeypatch.setattr(registry, "entry_points", lambda group: [broken] if group == registry.LAYERS.group else [])
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.warns(UserWarning, match="plugin 'broken'"):
        names = lipbench.list_layers()
    assert "aol" in names


def test_resolve_layers_expands_wildcards_and_rejects_unknown():
    assert registry.resolve_layers("aol,standard,aol") == ["aol", "standard"]
    assert "aol" in registry.resolve_layers("a*")
    with pytest.raises(lipbench.UserError, match="no registered layer matches"):
        registry.resolve_layers("qq*")


def test_a_method_protocol_sits_between_the_preset_and_its_per_method_entries(scratch_layer, tmp_path):
    from lipbench.budget import load_budget
    from lipbench.plan import expand

    scratch_layer("steady", protocol={"lr": 0.01})
    assert lipbench.get_method("steady").protocol == {"lr": 0.01}

    def lr(budget, overrides=None):
        (job,) = expand(["steady"], ["XS"], ["synthetic"], [budget], [0], overrides or {})
        return job.lr

    preset = tmp_path / "p.yaml"
    preset.write_text("budget: 2m\nlr: 0.05\nbatch_size: 64\n")
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("budget: 2m\nlr: 0.05\nmethods:\n  steady: {lr: 0.3}\n")
    assert lr(load_budget("2m")) == lr(load_budget(str(preset))) == 0.01
    assert lr(load_budget(str(tuned))) == 0.3
    assert lr(load_budget(str(tuned)), {"lr": 0.7}) == 0.7


def test_a_misspelt_method_protocol_fails_at_registration(scratch_layer):
    with pytest.raises(lipbench.UserError, match="layer 'wobbly': protocol: unknown setting 'learning_rate'"):
        scratch_layer("wobbly", protocol={"learning_rate": 0.01})
    with pytest.raises(lipbench.UserError, match="layer 'wobbly': protocol: lr must be a number"):
        scratch_layer("wobbly", protocol={"lr": "0.01"})  # types are exact: a string is no number
    assert "wobbly" not in lipbench.list_layers()


@pytest.mark.parametrize("layer", ["standard", "rslmi"])
def test_unconstrained_layers_get_a_stable_lr_on_a_plain_duration(layer):
    """At the default lr 0.05 (batch 256) both diverged on Fashion-MNIST within 35 steps; 0.01 trains."""
    from lipbench.budget import load_budget
    from lipbench.plan import expand

    (job,) = expand([layer], ["XS"], ["fashion-mnist"], [load_budget("2m")], [0], {})
    assert job.lr == 0.01
