"""Recipes: the losses against hand computations, Lookahead, the normalized head's per-pair certificate,
recipe files, and the protocol a plain duration gets."""
import math

import pytest
import torch
import torch.nn.functional as F

import lipbench
from lipbench.audit import audit_model
from lipbench.budget import load_budget
from lipbench.certify import Certifier, certificate, margins
from lipbench.datasets.synthetic import make_synthetic
from lipbench.errors import UserError
from lipbench.losses import LossContext, get_loss
from lipbench.manifold import RiemannianOptimizer
from lipbench.models.heads import WithNormalizedHead
from lipbench.optimizers import Lookahead
from lipbench.plan import expand
from lipbench.recipes import load_recipe, parse_recipe, recipe_names
from lipbench.settings import JobConfig, TrainSettings
from lipbench.train import loss_radius, train

SQRT2 = math.sqrt(2)
LOGITS, LABELS = torch.tensor([[1.0, 0.8, -1.0]]), torch.tensor([0])


def context(epsilon=0.1, offset=0.5, temperature=1.0, gamma=5.0, pairs=None):
    return LossContext(offset, temperature, epsilon, torch.full((3, 3), SQRT2) if pairs is None else pairs, gamma)


def cross_entropy_by_hand(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


def test_offset_cross_entropy_by_hand():
    value = get_loss("offset-ce").compute(LOGITS, LABELS, context(offset=0.5, temperature=0.25))
    assert float(value) == pytest.approx(0.25 * cross_entropy_by_hand([0.5 / 0.25, 0.8 / 0.25, -1 / 0.25], 0), rel=1e-6)


def test_emma_raises_each_other_logit_by_its_certified_worst_case():
    push = 0.1 * SQRT2  # both other classes are further below than the push: scale clipped to 1
    expected = cross_entropy_by_hand([0.0, -0.2 + push, -2.0 + push], 0)
    assert float(get_loss("emma").compute(LOGITS, LABELS, context())) == pytest.approx(expected, rel=1e-6)
    far = torch.tensor([[1.0, -0.5, -1.0]])  # at epsilon 0.5 both others are within their push: scale 1
    push = 0.5 * SQRT2
    assert float(get_loss("emma").compute(far, LABELS, context(epsilon=0.5))) == pytest.approx(
        cross_entropy_by_hand([0.0, -1.5 + push, -2.0 + push], 0), rel=1e-6)
    near = torch.tensor([[1.0, 0.99, -1.0]])  # class 1 is 0.01 below: scaled by 0.01 / push, raised to a tie
    push = 0.1 * SQRT2
    assert float(get_loss("emma").compute(near, LABELS, context())) == pytest.approx(
        cross_entropy_by_hand([0.0, 0.0, -2.0 + push], 0), rel=1e-5)


def test_logit_annealing_weighs_the_offset_loss_by_one_minus_p_to_the_gamma():
    push = 0.1 * SQRT2
    perturbed = [0.0 - 2.0, -0.2 + push, -2.0 + push]  # EMMA's logits, true one lowered by the offset 2
    per_point = cross_entropy_by_hand([v / 0.75 for v in perturbed], 0)
    expected = (1 - math.exp(-per_point)) ** 5 * per_point * 0.75
    value = get_loss("logit-annealing").compute(LOGITS, LABELS, context(offset=2.0, temperature=0.75, gamma=5.0))
    assert float(value) == pytest.approx(expected, rel=1e-6)


def tiny_linear_head(seed=0, classes=5, width=3):
    torch.manual_seed(seed)
    features = torch.nn.Identity()
    features.in_shape, features.method_layers, features.lipschitz_bound = (width,), lambda: [], lambda: 1.0
    return WithNormalizedHead(features, width, classes)


@pytest.mark.parametrize("name", ["emma", "logit-annealing"])
def test_margin_losses_have_finite_gradients_through_a_normalized_head(name):
    model = tiny_linear_head(classes=4, width=6)
    x, y = torch.randn(32, 6), torch.randint(4, (32,))
    loss = get_loss(name).compute(model(x), y, context(pairs=model.pair_lipschitz(exact=False)))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_per_pair_certificate_is_exact_on_a_linear_model_and_never_looser_than_the_margin_one():
    for seed in range(5):
        model = tiny_linear_head(seed)
        x, y = torch.randn(200, 3) * 2, torch.randint(5, (200,))
        with torch.no_grad():
            logits = model(x).double()
        weight = F.normalize(model.head.weight.double(), dim=1)
        radii = Certifier.for_model(model, 1.0).radii(logits, y)
        for eps in (0.05, 0.2, 0.5):
            # exact worst case of a linear map: z_y - z_j drops by exactly eps ||w_y - w_j|| at worst
            worst = torch.stack([logits[i, y[i]] - logits[i] - eps * (weight[y[i]] - weight).norm(dim=1)
                                 for i in range(len(y))])
            worst = worst.scatter(1, y[:, None], math.inf).min(dim=1).values
            assert torch.equal(radii > eps, worst > 0)
        margin_radii = margins(logits, y) / (SQRT2 * torch.linalg.matrix_norm(weight, ord=2))
        assert (radii.clamp_min(0) >= margin_radii.clamp_min(0) - 1e-12).all()


def test_lookahead_interpolates_after_k_steps_and_restarts_the_fast_weights():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = Lookahead(torch.optim.SGD([weight], lr=0.1, momentum=0.0), steps=3, alpha=0.5)
    for step in range(1, 4):
        weight.grad = torch.tensor([1.0, 1.0])
        optimizer.step()
        if step < 3:
            assert weight.tolist() == pytest.approx([1.0 - 0.1 * step, -2.0 - 0.1 * step])
    assert weight.tolist() == pytest.approx([1.0 - 0.5 * 0.3, -2.0 - 0.5 * 0.3])  # slow + 0.5 (fast - slow)
    restored = Lookahead(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1), steps=3, alpha=0.5)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.counter == 3 and restored.slow[0].tolist() == pytest.approx(weight.tolist())


def test_manifold_lookahead_keeps_fast_and_slow_matrices_orthogonal_over_1000_steps():
    """With LipNeXt's polar retraction every 100 steps; between retractions FastExp's truncation drifts."""
    torch.manual_seed(0)
    point = torch.nn.Parameter(torch.linalg.qr(torch.randn(8, 8))[0])
    target, eye = torch.randn(8, 8), torch.eye(8)
    optimizer = RiemannianOptimizer([point], lr=0.01, method="nadam", orthogonal=True, lookahead_steps=6,
                                    retraction_interval=100)
    drift = []
    for _ in range(1000):
        point.grad = point.detach() - target
        optimizer.step()
        drift.append(float((point.detach().T @ point.detach() - eye).norm()))
    slow = optimizer.state[point]["slow"]
    assert drift[-1] < 1e-5 and (slow.T @ slow - eye).norm() < 1e-5
    assert max(drift) < 1e-3


def test_every_shipped_recipe_loads_and_names_known_parts():
    assert {"prach", "liresnet", "bronet", "lipnext"} <= set(recipe_names())
    assert load_recipe("prach").settings == {}
    for name in recipe_names():
        recipe = load_recipe(name)
        settings = TrainSettings(budget_s=1, **recipe.settings)
        get_loss(settings.loss), lipbench.registry.HEADS.get(settings.head)
    bronet = load_recipe("bronet").settings
    assert (bronet["loss"], bronet["optimizer"], bronet["head"], bronet["lookahead_steps"]) == \
        ("logit-annealing", "nadam", "normalized", 6)


@pytest.mark.parametrize("text, message", [
    ("loss: emma\nlosss: 1\n", "unknown key 'losss'"),
    ("optimizer: lion\n", "optimizer must be sgd or adam or nadam, got 'lion'"),
    ("lr: fast\n", "lr must be a number"),
])
def test_a_bad_recipe_fails_with_one_line_naming_it(text, message):
    with pytest.raises(UserError, match=message) as raised:
        parse_recipe("mine", text, "mine.yaml")
    assert "\n" not in str(raised.value) and str(raised.value).startswith("mine.yaml")


def test_an_unknown_loss_or_head_fails_at_planning():
    for settings, message in (({"loss": "hinge"}, "unknown loss 'hinge'"), ({"head": "wide"}, "unknown head 'wide'")):
        with pytest.raises(UserError, match=message):
            expand(["aol"], ["XS"], ["synthetic"], [load_budget("2m")], [0], settings)


def test_a_plain_duration_gets_the_protocol_that_fits_it():
    (cpu_minutes,) = expand(["aol"], ["XS"], ["fashion-mnist"], [load_budget("2m")], [0], {}, device_type="cpu")
    assert (cpu_minutes.protocol, cpu_minutes.batch_size, cpu_minutes.lr, cpu_minutes.budget) == \
        ("short-run", 32, 0.02, "2m")
    (gpu_hours,) = expand(["aol"], ["XS"], ["cifar10"], [load_budget("8h")], [0], {}, device_type="cuda")
    assert (gpu_hours.protocol, gpu_hours.batch_size) == ("paper", 256)
    (forced,) = expand(["aol"], ["XS"], ["fashion-mnist"], [load_budget("2m")], [0], {}, device_type="cpu",
                       protocol="paper")
    assert forced.batch_size == 256
    (preset,) = expand(["aol"], ["XS"], ["fashion-mnist"], [load_budget("cpu-2m")], [0], {"batch_size": 64})
    assert (preset.protocol, preset.batch_size) == ("", 64)  # a preset brings its protocol; options win


def test_a_recipe_overrides_the_preset_and_the_options_override_the_recipe():
    recipe = load_recipe("liresnet")
    (job,) = expand(["cpl"], ["XS"], ["fashion-mnist"], [load_budget("cpu-2m")], [0], {"grad_clip": 1.0},
                    recipe=recipe)
    assert (job.recipe, job.lr, job.optimizer, job.head, job.grad_clip) == ("liresnet", 0.001, "nadam", "normalized", 1.0)


def test_default_jobs_keep_their_ids():
    assert JobConfig(layer="aol", size="XS", dataset="fashion-mnist", budget="2m", budget_s=120.0).job_id == \
        "91f003cd1439"


def test_the_radius_ramps_from_start_to_end():
    settings = TrainSettings(budget_s=1, loss_eps=0.1, eps_start=0.1, eps_end=3.0, eps_ramp=0.5)
    assert [loss_radius(settings, p) for p in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.01, 0.155, 0.3, 0.3])
    assert loss_radius(TrainSettings(budget_s=1), 0.0) == pytest.approx(36 / 255)


@pytest.mark.parametrize("recipe", ["liresnet", "bronet"])
def test_a_recipe_trains_a_normalized_head_whose_per_pair_certificate_the_audit_proves(recipe):
    data = make_synthetic(n_train=256, n_test=64, n_classes=4, size=8)
    settings = TrainSettings(budget_s=600, batch_size=32, max_steps=10, **{**load_recipe(recipe).settings, "lr": 0.01})
    torch.manual_seed(0)
    model = lipbench.create_model("aol", "XS", data.in_shape, data.n_classes, head=settings.head)
    method = lipbench.get_method("aol")
    report = train(model, method, data, settings, torch.device("cpu"))
    assert report.steps == 10 and math.isfinite(report.final_loss)
    fields, certifier = certificate(model, method)
    assert certifier.kind == "pairwise" and fields["lipschitz_bound_features"] <= 1 + 1e-5
    audit = audit_model(model, method, data, fields, torch.device("cpu"), samples=8, steps=10, eval_points=64,
                        lower_points=2, lower_steps=3)
    assert audit["certificate_kind"] == "pairwise" and audit["violations"] == 0 and audit["passed"], audit["problems"]
