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
