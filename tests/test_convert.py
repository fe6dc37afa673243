"""Converting nn.Linear layers of real timm models (built offline, pretrained=False)."""

import copy
import re

import pytest
import timm
import timm.optim
import timm.scheduler
import torch
from timm.models.mlp_mixer import MlpMixer
from torch import nn

from torch_structlearn import (
    Learn,
    Prune,
    StructLearnedLinear,
    convert,
    convert_structure,
    load,
    save,
)
from torch_structlearn.convert import select_linears

from .conftest import require_data


def _images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loader(n=32, size=32, bs=8):
    X, y = _images(n, size)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=bs)


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10)


def _mixer():
    torch.manual_seed(0)
    return MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=64)


def _resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10)


MODELS = {  # builder, layers to convert, a learning rate at which the dense model trains
    "vit_tiny": (_vit, "blocks.*.mlp.fc*", 3e-4),
    "mixer": (_mixer, "blocks.*.mlp_channels.fc*", 1e-2),
    "resnet18_fc": (_resnet, "fc", 1e-3),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_density_one_keeps_the_output(name):
    build, pattern, _ = MODELS[name]
    model = build().eval()
    x, _ = _images(4, 32)
    with torch.no_grad():
        before = model(x)
    report = convert(model, None, density=1.0, include=pattern, verbose=False)
    assert report and all(isinstance(model.get_submodule(r["name"]), StructLearnedLinear) for r in report)
    assert all(r["density"] == 1.0 for r in report)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


def test_select_linears_globs_and_regex():
    model = _vit()
    fcs = select_linears(model, "blocks.*.mlp.fc*")
    assert len(fcs) == 24 and all(re.fullmatch(r"blocks\.\d+\.mlp\.fc[12]", n) for n in fcs)
    assert select_linears(model, re.compile(r"blocks\.0\..*")) == [
        "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert "head" not in select_linears(model, exclude="head")
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        convert(model, _loader(), density=0.1, include="nothing.*", verbose=False)
    with pytest.raises(ValueError, match="init must be one of"):
        convert(model, _loader(), density=0.1, method=Learn("zeros"), verbose=False)
    with pytest.raises(ValueError, match="method must be one of"):
        convert(model, _loader(), density=0.1, method="obs", verbose=False)
    with pytest.raises(ValueError, match="pattern must be None, 'n:m'"):
        convert(model, _loader(), density=0.1, pattern="2-4", verbose=False)
    with pytest.raises(ValueError, match="density must be in"):
        convert(model, _loader(), density=2.0, verbose=False)
    with pytest.raises(TypeError, match="seed must be an int, got str"):
        convert(model, _loader(), density=0.1, seed="0", verbose=False)
    with pytest.raises(ValueError, match="a loader is needed"):
        convert(model, None, density=0.1, verbose=False)
    one_shot = iter(_loader())
    with pytest.raises(TypeError, match="convert with epochs=2 reads the loader more than once"):
        convert(model, one_shot, density=0.1, method=Learn(epochs=2), verbose=False)
    assert len(next(one_shot)[0]) == 8  # refused before reading
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in fcs)  # nothing converted


@pytest.mark.parametrize("name", list(MODELS))
def test_ten_percent_learns_from_own_inputs_and_trains(name, tmp_path):
    build, pattern, lr = MODELS[name]
    model = build()
    report = convert(model, _loader(), density=0.1, include=pattern, method="dictionary",
                     verbose=False)
    for r in report:
        layer = model.get_submodule(r["name"])
        assert abs(layer.density - 0.1) < 0.01 and "objective" in r
    # trains with a timm optimizer and scheduler
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=lr, weight_decay=0.0)
    sched = timm.scheduler.CosineLRScheduler(opt, t_initial=30)
    x, y = _images(16, 32, seed=1)
    model.train()
    losses = []
    for step in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(step + 1)
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    # state_dict round trip into a fresh model with the same structure
    model.eval()
    path = save(model, tmp_path / "structures.safetensors")
    fresh = build().eval()
    replaced = convert_structure(fresh, path)
    assert sorted(replaced) == sorted(r["name"] for r in report)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))
    named = load(path)
    assert set(named) == set(replaced)


def test_init_modes():
    base = _resnet()
    for init in ("keep", "dictionary", "random"):
        model = _resnet()
        convert(model, _loader(size=32), density=0.5, include="fc", method=Learn(init),
                verbose=False)
        fc = model.fc
        kept = base.fc.weight[fc.connectivity.to_mask()]
        if init == "keep":
            assert torch.equal(fc.csr_values().detach(), kept.detach())
        else:
            assert not torch.equal(fc.csr_values().detach(), kept.detach())


def test_torch_compile_of_converted_model():
    model = _mixer().eval()
    convert(model, _loader(), density=0.25, include="blocks.*.mlp_channels.fc*", verbose=False)
    x, _ = _images(2, 32)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_finetune_recipe_pretrains_compares_and_publishes(tmp_path, monkeypatch, load_recipe):
    import json

    from torch_structlearn import hub

    mod = load_recipe("finetune_timm.py")
    out = tmp_path / "ft.json"
    assert mod.main(["--dataset", "digits", "--epochs", "1", "--pretrain-epochs", "1",
                     "--limit", "96", "--img-size", "32", "--patch-size", "8",
                     "--batch-size", "32", "--compare", "--convert-batches", "2",
                     "--hub", "vit-digits", "--hub-root", str(tmp_path / "hub"),
                     "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["converted_layers"] == 24 and 0 <= res["test_accuracy"] <= 1
    assert 0 <= res["ema_test_accuracy"] <= 1
    assert list(res["masks"]) == ["learned", "magnitude", "random"]
    assert 0 <= res["dense_test_accuracy"] <= 1
    for row in res["masks"].values():
        assert 0 <= row["test_accuracy_before_finetune"] <= 1
    monkeypatch.setenv("STRUCTLEARN_HUB", str(tmp_path / "hub"))
    card = hub.card("vit-digits")
    assert card["timm_kwargs"] == {"num_classes": 10, "img_size": 32, "patch_size": 8}
    assert "threads" in card["hardware"] and card["hardware"] == res["device"]  # where it ran
    assert len(hub.load_structure("vit-digits")) == 24


def test_convert_structure_that_does_not_fit_leaves_the_model_unchanged(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    X = torch.randn(64, 12)
    convert(model, [X[:32], X[32:]], density=0.5, method=Learn(max_iter=5), verbose=False)
    path = save(model, tmp_path / "s.safetensors")
    # the second layer of this model is wider than the saved one
    other = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"'2' has shape \(6, 8\), the file \(4, 8\)"):
        convert_structure(other, path)
    assert type(other[0]) is nn.Linear and type(other[2]) is nn.Linear
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_a_layer_forward_never_calls_or_nan_input_is_a_clear_error_and_nothing_changes():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(16, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.used(x)

    model = Model()
    X = torch.randn(64, 16)
    with pytest.raises(ValueError, match=r"layers \['spare'\] got no input .* exclude="):
        convert(model, [X[:32], X[32:]], density=0.5, method=Learn(max_iter=5), verbose=False)
    assert type(model.used) is nn.Linear and type(model.spare) is nn.Linear
    assert not model.used._forward_pre_hooks  # the capture hooks are removed
    X[40, 3] = float("nan")
    with pytest.raises(ValueError, match=r"layer 'used' input: X contains NaN or Inf"):
        convert(model, [X[:32], X[32:]], density=0.5, exclude="spare",
                method=Learn(max_iter=5), verbose=False)
    assert type(model.used) is nn.Linear and not model.used._forward_pre_hooks
    for sequential in (False, True):  # the trained-model methods' statistics check too
        with pytest.raises(ValueError, match=r"layer 'used' input: input contains NaN or Inf"):
            convert(model, [X[:32], X[32:]], density=0.5, exclude="spare",
                    method=Prune("refit", sequential=sequential), verbose=False)
        assert type(model.used) is nn.Linear and not model.used._forward_pre_hooks
    X[40, 3] = 0.0
    report = convert(model, [X[:32], X[32:]], density=0.5, exclude="spare",
                     method=Learn(max_iter=5), verbose=False)
    assert [r["name"] for r in report] == ["used"] and type(model.spare) is nn.Linear


def test_densify_inverts_convert_and_keeps_outputs():
    """densify (the inverse of convert): every StructLearnedLinear back to an nn.Linear with
    the masked weights; the model computes the same function."""
    import torch_structlearn as tsl

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 4))
    x = torch.randn(5, 12)
    loader = [(x, None)]
    convert(model, loader, density=0.5, verbose=False)
    assert isinstance(model[0], tsl.StructLearnedLinear)
    want = model(x)
    masked = model[0].dense_weight().detach().clone()
    out = tsl.densify(model)
    assert out is model and type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
    torch.testing.assert_close(model(x), want)
    assert torch.equal(model[0].weight, masked)
    single = tsl.StructLearnedLinear(6, 3, density=0.5)
    lin = tsl.densify(single)
    assert type(lin) is nn.Linear
    torch.testing.assert_close(lin(torch.ones(2, 6)), single(torch.ones(2, 6)))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        tsl.densify("model")


@pytest.mark.parametrize("train", [True, False])
def test_transformer_encoder_layer_runs_after_conversion(train):
    """Code that reads nn.Linear's .weight (nn.TransformerEncoderLayer and its eval-mode fast
    path) works on converted layers: .weight is the dense masked weight."""
    import torch_structlearn as tsl

    torch.manual_seed(0)
    enc = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True,
                                     dropout=0.0)
    x = torch.randn(3, 5, 16)
    enc.linear1 = tsl.StructLearnedLinear.from_linear(enc.linear1, density=0.5)
    enc.linear2 = tsl.StructLearnedLinear.from_linear(enc.linear2, density=0.5)
    reference = tsl.densify(__import__("copy").deepcopy(enc))
    enc.train(train)
    reference.train(train)
    with torch.set_grad_enabled(train):
        got, want = enc(x), reference(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if train:
        got.sum().backward()
        assert enc.linear1.values.grad is not None
    w = enc.linear1.weight
    assert w.shape == (32, 16) and int((w != 0).sum()) == enc.linear1.nnz


def _trained_mlp(seed=0):
    """A small MLP trained to fit a fixed random teacher (a trained stand-in for the tests)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(512, 20, generator=g) @ torch.randn(20, 20, generator=g)  # correlated inputs
    teacher = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 5))
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 5))
    torch.manual_seed(seed)
    with torch.no_grad():
        Y = teacher(X)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.mse_loss(model(X), Y).backward()
        opt.step()
    return model, X


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "refit"])
def test_convert_methods_for_trained_models_match_the_pruning_references(method):
    """convert(..., method=) on a trained MLP: each layer's mask and weights are what
    torch_structlearn.pruning gives on that layer's captured inputs (the second moment computed
    here from the inputs directly), with the per-unit fan-in."""
    import copy

    from torch_structlearn import pruning

    model, X = _trained_mlp()
    original = copy.deepcopy(model)
    inputs = {"0": X, "2": torch.tanh(original[0](X)).detach()}
    report = convert(model, [(X[:300],), (X[300:],)], density=0.25, method=method, verbose=False)
    for r in report:
        name = r["name"]
        W = original.get_submodule(name).weight.detach().double()
        H = inputs[name].double().T @ inputs[name].double()
        if method == "magnitude":
            mask, kept = pruning.magnitude(W, 0.25), W
        elif method == "wanda":
            mask, kept = pruning.wanda(W, H, 0.25), W
        elif method == "sparsegpt":
            mask, kept = pruning.sparsegpt(W, H, 0.25)
        else:
            mask, kept = pruning.obs_refit(W, H, 0.25)
        layer = model.get_submodule(name)
        assert torch.equal(layer.connectivity.to_mask(), mask)
        torch.testing.assert_close(layer.dense_weight().double(), kept * mask, rtol=1e-4, atol=1e-5)
        assert (r["method"], "output_error" in r) == (method, method != "magnitude")


def test_refit_keeps_a_trained_layer_closest_to_its_function():
    """On the calibration inputs, the refit conversion's relative output error is below Wanda's
    and SparseGPT's, layer by layer; and it is the default for a trained model."""
    import copy

    model, X = _trained_mlp(seed=1)
    errors = {}
    for method in ("wanda", "sparsegpt", "refit", None):
        m = copy.deepcopy(model)
        report = convert(m, [(X,)], density=0.25, method=method, verbose=False)
        errors[method] = [r["output_error"] for r in report]
    assert errors[None] == errors["refit"]
    for i in range(2):
        assert errors["refit"][i] < min(errors["wanda"][i], errors["sparsegpt"][i])


def test_sequential_refit_fits_the_dense_outputs():
    """sequential=True: the second layer is calibrated on the inputs the converted first layer
    gives it, and refit aims at the dense model's outputs — checked against that least-squares
    target computed here from the activations directly; the reported error is
    ‖W X − Ŵ X̂‖² / ‖W X‖² on them."""
    import copy

    from torch_structlearn import pruning

    model, X = _trained_mlp(seed=2)
    dense = copy.deepcopy(model)
    report = convert(model, [(X[:300],), (X[300:],)], density=0.25,
                     method=Prune(sequential=True), verbose=False)
    W = dense[2].weight.detach().double()
    x_ref = torch.tanh(dense[0](X)).detach().double()
    x_hat = torch.tanh(model[0](X)).detach().double()
    H = x_hat.T @ x_hat
    Hd = H + 0.01 * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    target = torch.linalg.solve(Hd, x_hat.T @ x_ref @ W.T).T
    mask, kept = pruning.obs_refit(target, H, 0.25)
    assert torch.equal(model[2].connectivity.to_mask(), mask)
    torch.testing.assert_close(model[2].dense_weight().double(), kept * mask, rtol=1e-4, atol=1e-5)
    err = ((x_ref @ W.T - x_hat @ (kept * mask).T).square().sum() / (x_ref @ W.T).square().sum())
    assert report[1]["output_error"] == pytest.approx(float(err), rel=1e-6)
    # the fit to the dense outputs beats calibrating on the converted inputs alone
    plain = copy.deepcopy(dense)
    convert(plain, [(X,)], density=0.25, method=Prune("sparsegpt", sequential=True),
            verbose=False)
    out = dense(X)
    assert (model(X) - out).square().sum() < (plain(X) - out).square().sum()


def test_trained_methods_with_block_masks():
    """pattern=(bo, bi) for every trained-model method: whole blocks, the same number per block
    row, the layer computes its masked dense weight; refit's error is the lowest."""
    import copy

    model, X = _trained_mlp()
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt", "refit"):
        m = copy.deepcopy(model)
        report = convert(m, [(X,)], density=0.25, method=method,
                         pattern=(4, 4) if method != "refit" else "4x4", include="0",
                         verbose=False)
        layer = m[0]
        assert layer.block == (4, 4)
        bm = layer.connectivity.to_mask().reshape(8, 4, 5, 4)
        assert bool((bm.all(3).all(1) | ~bm.any(3).any(1)).all())  # whole blocks
        assert bool((bm.any(3).any(1).sum(1) == 2).all())  # ceil(25 % of 5) per block row
        with torch.no_grad():
            torch.testing.assert_close(layer(X[:5]), X[:5] @ layer.dense_weight().T + layer.bias)
        errors[method] = report[0].get("output_error")
    assert errors["refit"] < min(errors["wanda"], errors["sparsegpt"])


def test_methods_carry_their_settings_and_bad_ones_are_refused_up_front():
    model = nn.Sequential(nn.Linear(8, 8))
    loader = [(torch.randn(4, 8),)]
    with pytest.raises(TypeError, match="sequential must be a bool"):
        Prune("refit", sequential=1)
    with pytest.raises(ValueError, match="name must be one of"):
        Prune("dictionary")
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['lam'\]"):
        Learn(lam=0.1)
    with pytest.raises(TypeError, match="learner must be a DictionaryLearner"):
        Learn(learner={"lam1": 0.1})
    with pytest.raises(ValueError, match="epochs must be"):
        Learn(epochs=0)
    with pytest.raises(TypeError, match="method must be a name"):
        convert(model, loader, density=0.5, method=3)
    with pytest.raises(ValueError, match="method must be one of"):
        convert(model, loader, density=0.5, method="obs")
    with pytest.raises(ValueError, match="a loader is needed"):
        convert(model, None, density=0.5, method="wanda")
    with pytest.raises(ValueError, match=r"blocks \(3, 3\) do not divide layer '0'"):
        convert(model, loader, density=0.5, pattern=(3, 3))
    assert repr(Prune("wanda")) == "Prune('wanda')" and Prune() == Prune("refit")
    assert repr(Learn("random", max_iter=5)) == "Learn('random', max_iter=5)"
    convert(model, None, density=0.5, method="magnitude", verbose=False)  # needs no data
    assert model[0].nnz == 32


def test_old_spellings_still_work_with_a_deprecation_warning():
    """0.1's init= / nm= / block= / sequential= / learner= / coding keywords map onto the
    method objects and pattern (one release), refusing what 0.1 refused."""
    model, X = _trained_mlp()
    new, old = copy.deepcopy(model), copy.deepcopy(model)
    convert(new, [(X,)], density=0.5, method="wanda", pattern="2:4", verbose=False)
    with pytest.warns(DeprecationWarning, match=r"convert\(nm=\) is deprecated"):
        convert(old, [(X,)], density=0.5, method="wanda", nm=(2, 4), verbose=False)
    for a, b in zip(new.modules(), old.modules(), strict=True):
        if isinstance(a, StructLearnedLinear):
            assert a.connectivity == b.connectivity
    m = nn.Sequential(nn.Linear(8, 8))
    with pytest.warns(DeprecationWarning):
        convert(m, [(torch.randn(16, 8),)], density=0.5, init="random", max_iter=3,
                verbose=False)  # 0.1: init != 'keep' made the method 'dictionary'
    assert isinstance(m[0], StructLearnedLinear)
    for kw, msg in (({"method": "wanda", "init": "random"}, "method='wanda' chooses the kept"),
                    ({"nm": (2, 4), "method": "dictionary"}, "not method='dictionary'"),
                    ({"nm": (2, 4), "block": (4, 4)}, "give nm= or block=, not both"),
                    ({"method": Prune(), "sequential": True}, "carries its own settings")):
        with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match=msg):
            convert(nn.Sequential(nn.Linear(8, 8)), [(torch.randn(4, 8),)], density=0.5, **kw)
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['densty'\]"):
        convert(nn.Sequential(nn.Linear(8, 8)), None, density=0.5, densty=0.5)


def test_convert_with_2_4_masks():
    """pattern='2:4': every converted unit keeps 2 of each 4 consecutive inputs — for the
    trained-model methods and for a dictionary's masks alike."""
    model, X = _trained_mlp()
    convert(model, [(X,)], density=0.5, method="refit", pattern="2:4", include="0", verbose=False)
    mask = model[0].connectivity.to_mask()
    assert bool((mask.reshape(32, -1, 4).sum(2) == 2).all())
    learned = nn.Sequential(nn.Linear(8, 8))
    convert(learned, [(torch.randn(64, 8),)], density=0.5, pattern="2:4",
            method=Learn(max_iter=5), verbose=False)
    assert bool((learned[0].connectivity.to_mask().reshape(8, 2, 4).sum(2) == 2).all())
    with pytest.raises(ValueError, match=r"layer '0': nm=\(2, 4\): m=4 must divide in_features=10"):
        convert(nn.Sequential(nn.Linear(10, 8)), [(torch.randn(4, 10),)], density=0.5,
                method="wanda", pattern="2:4")
    with pytest.raises(ValueError, match=r"density must be 0.5, got 0.25"):
        convert(nn.Sequential(nn.Linear(8, 8)), [(torch.randn(4, 8),)], density=0.25,
                pattern="2:4")


# ---------------------------------------------------------------- shared modules and tied weights


class _Shared(nn.Module):
    """One nn.Linear used under two names, called twice per forward."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32)
        self.b = self.a
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(x))))


def test_a_shared_module_is_converted_once_and_every_name_points_to_it(tmp_path):
    torch.manual_seed(0)
    model, X = _Shared(), torch.randn(256, 32)
    W = model.a.weight.detach().clone()
    with torch.no_grad():  # both call sites' inputs: what the statistics must hold
        both = torch.cat([X, torch.relu(model.a(X))]).double()
    seen = []
    model.a.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    dense_out = model(X)
    report = convert(model, [(X[:128],), (X[128:],)], density=0.5, exclude="head",
                     verbose=False)
    # twice per forward: the dense run above, then both batches of the capture (every call
    # site's inputs reach the statistics)
    assert seen == [256, 256, 128, 128, 128, 128]
    assert [r["name"] for r in report] == ["a"] and report[0]["aliases"] == ["b"]
    assert isinstance(model.a, StructLearnedLinear) and model.b is model.a
    from torch_structlearn import pruning

    H = both.T @ both
    W_hat = model.a.dense_weight().detach().double()
    want = pruning.output_error(W.double(), W_hat, H) / pruning.output_error(
        W.double(), torch.zeros_like(W_hat), H)
    assert report[0]["output_error"] == pytest.approx(want, rel=1e-3)
    with torch.no_grad():
        assert float((model(X) - dense_out).norm() / dense_out.norm()) < 0.6
    # saved by its first name; applied to a fresh shared model, every name gets it
    path = save(model, tmp_path / "s.safetensors")
    fresh = _Shared()
    assert convert_structure(fresh, path) == ["a"]
    assert isinstance(fresh.b, StructLearnedLinear) and fresh.b is fresh.a
    from torch_structlearn import densify

    densify(fresh)
    assert type(fresh.a) is nn.Linear and fresh.b is fresh.a
    # a name matched by exclude leaves the module dense under both names
    other = _Shared()
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        convert(other, None, density=0.5, method="magnitude", exclude=["b", "head"])


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.mid = nn.Linear(16, 16)
        self.out = nn.Linear(16, 50, bias=False)
        self.out.weight = self.emb.weight  # weight tying (embedding ↔ output head)

    def forward(self, idx):
        return self.out(torch.relu(self.mid(self.emb(idx))))


def test_a_tied_weight_is_refused_by_default_and_untied_only_when_asked():
    model = _Tied()
    with pytest.raises(ValueError, match=r"out.weight is the same Parameter as emb.weight: "
                                         r"converting 'out' would break that tie.*"
                                         r"exclude='out'.*untie=True"):
        convert(model, None, density=0.5, method="magnitude", verbose=False)
    assert type(model.mid) is nn.Linear and model.out.weight is model.emb.weight  # untouched
    convert(model, None, density=0.5, method="magnitude", exclude="out", verbose=False)
    assert isinstance(model.mid, StructLearnedLinear) and model.out.weight is model.emb.weight
    model = _Tied()
    with pytest.warns(UserWarning, match="out.weight is the same Parameter as emb.weight.*own copy"):
        convert(model, None, density=0.5, method="magnitude", untie=True, verbose=False)
    assert isinstance(model.out, StructLearnedLinear)
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 50)
    with pytest.raises(TypeError, match="untie must be a bool"):
        convert(_Tied(), None, density=0.5, method="magnitude", untie="yes")


def test_float32_conversion_matches_float64_on_a_trained_mnist_mlp(tmp_path, load_recipe):
    """recipes/exp_precision.py at a small scale: Prune('refit') in float32 (the default) and
    in float64 give the same test accuracy and output errors to about 3 digits."""
    import json

    require_data("MNIST")
    out = tmp_path / "p.json"
    assert load_recipe("exp_precision.py").main(["--limit", "2048", "--epochs", "1", "--calib",
                                                 "512", "--hidden", "128", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    for f32, f64 in zip(rows[::2], rows[1::2], strict=True):
        assert f32["dtype"] == "torch.float32" and f64["dtype"] == "torch.float64"
        assert abs(f32["test_accuracy"] - f64["test_accuracy"]) <= 0.002
        for name, e in f32["output_error"].items():
            assert e == pytest.approx(f64["output_error"][name], rel=1e-2, abs=1e-5)
    assert repr(Prune("refit", dtype=torch.float64)) == "Prune('refit', dtype=torch.float64)"
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        Prune(dtype=torch.float16)
