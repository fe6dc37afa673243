import pytest
import timm
import torch

from torch_structlearn import StructLearnedLinear, convert, hub, save
from torch_structlearn.timm_models import register_converted, register_hub, timm_name


def test_hub_entries_build_through_timm():
    names = register_hub()
    assert timm_name("mnist-single-d5") == "structlearn_mnist_single_d5" and names
    assert "structlearn_mnist_single_d5" in timm.list_models("structlearn_*")
    ref = hub.load("mnist-single-d5")
    model = timm.create_model("structlearn_mnist_single_d5", pretrained=True)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    fresh = timm.create_model("structlearn_mnist_single_d5", pretrained=False)
    assert not torch.equal(fresh.head.weight, ref.head.weight)
    assert fresh.body.layers[0][0].connectivity == ref.body.layers[0][0].connectivity


def test_converted_model_builds_by_name(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.rand(4, 3, 32, 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(16, 3, 32, 32)),
                                         batch_size=8)
    convert(model, loader, density=0.25, include="fc", verbose=False)
    path = save(model, tmp_path / "fc.safetensors")
    register_converted("resnet18_structlearn_fc_test", "resnet18", path, num_classes=10)
    built = timm.create_model("resnet18_structlearn_fc_test", pretrained=True).eval()
    assert isinstance(built.fc, StructLearnedLinear)
    assert built.fc.connectivity == model.fc.connectivity
    assert torch.equal(built.fc.values, model.fc.values)
    built.load_state_dict(model.state_dict())  # the rest of the weights, e.g. from a checkpoint
    with torch.no_grad():
        torch.testing.assert_close(built(x), model(x))


def test_register_converted_checks_its_arguments_before_registering(tmp_path):
    path = save(StructLearnedLinear(8, 4), tmp_path / "layer.safetensors")
    with pytest.raises(ValueError, match="base 'resnet_nope' is not a timm model"):
        register_converted("structlearn_bad_base", "resnet_nope", path)
    with pytest.raises(FileNotFoundError, match="structure_file '.*missing.safetensors' does not exist"):
        register_converted("structlearn_bad_file", "resnet18", tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="name must be a Python identifier"):
        register_converted("bad-name", "resnet18", path)
    assert not timm.is_model("structlearn_bad_base") and not timm.is_model("structlearn_bad_file")


def test_timm_optimizer_factory_decays_the_sparse_weights_like_linear_weights():
    """timm's create_optimizer_v2 exempts 1-D parameters from weight decay: a converted layer's
    `values` (stored (nnz, 1)) land in the decay group with the weights of the nn.Linear
    layers, its bias in the no-decay group — and one AdamW step shrinks them as it shrinks a
    dense weight (zero gradient: the step is the decay alone)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    convert(model, None, density=0.5, method="magnitude", include="0", verbose=False)
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, "adamw", lr=0.1, weight_decay=0.05)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model[0].values) in decay and id(model[2].weight) in decay
    assert id(model[0].bias) not in decay and id(model[2].bias) not in decay
    before = model[0].values.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model[0].values.detach(), before * (1 - 0.1 * 0.05))


def test_state_dicts_with_one_dimensional_values_still_load():
    """A state_dict saved when `values` was (nnz,) loads into the (nnz, 1) parameter."""
    layer = StructLearnedLinear(6, 4, density=0.5)
    old = {k: v.clone() for k, v in layer.state_dict().items()}
    old["values"] = old["values"].reshape(-1)
    fresh = StructLearnedLinear(6, 4, density=0.5)
    fresh.load_state_dict(old)
    assert fresh.values.shape == (layer.nnz, 1)
    assert torch.equal(fresh.values, layer.values)
