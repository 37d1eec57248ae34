import pytest

from bertsent.errors import ModelError
from bertsent.modeling.loading import embedded_model_path, load_classifier, load_tokenizer, resolve_model


def test_embedded_default_resolves_to_the_packaged_folder():
    path = embedded_model_path()
    assert (path / "model.safetensors").is_file()
    assert resolve_model(None) == str(path)
    assert resolve_model("all-MiniLM-L6-v2") == str(path)


def test_embedded_model_gets_a_fresh_two_class_head():
    model = load_classifier(None, {0: "negative", 1: "positive"})
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.classifier.out_features == 2
    assert load_tokenizer(None).is_fast


def test_local_folder_and_resized_head(tiny_model_dir):
    model = load_classifier(tiny_model_dir, {0: "a", 1: "b", 2: "c"})
    assert model.classifier.out_features == 3
    assert model.config.label2id == {"a": 0, "b": 1, "c": 2}


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no such model folder"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="could not be fetched from the hub.*local save_pretrained folder"):
        load_classifier("some-org/not-a-cached-model", {0: "negative", 1: "positive"})


def test_only_safetensors_weights_are_loaded(tiny_model_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="cannot load model"):
        load_classifier(folder)
