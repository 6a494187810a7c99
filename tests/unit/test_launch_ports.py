"""`make serve`'s launcher checks the ports a config will listen on before anything starts."""

from __future__ import annotations

from pathlib import Path

import yaml

from raytorch.launch import grpc_port, http_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_configs_listen_on_8000_and_7070() -> None:
    for config in ("quickstart.yaml", "densenet.yaml", "text_classifier.yaml"):
        path = str(ROOT / "configs" / config)
        assert (http_port(path), grpc_port(path)) == (8000, 7070), config


def test_no_grpc_port_unless_the_ingress_serves_grpc(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config["applications"][0]["args"]["grpc"] = False
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert grpc_port(str(path)) is None
    config["applications"][0]["args"]["grpc"] = True
    del config["grpc_options"]
    path.write_text(yaml.safe_dump(config))
    assert grpc_port(str(path)) == 9000  # Serve's default grpc_options.port


def test_ray_is_kept_on_loopback_when_the_config_serves_loopback() -> None:
    """Issue 24: Ray's own ports follow the config's host (the e2e check lists the sockets)."""
    from raytorch.server import serves_loopback_only

    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert serves_loopback_only({"http_options": {"host": host}}), host
    for host in ("0.0.0.0", "::", "10.1.2.3", "serving.example"):
        assert not serves_loopback_only({"http_options": {"host": host}}), host
    assert not serves_loopback_only({})  # Serve's default host is every interface
    shipped = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    assert serves_loopback_only(shipped)


def test_a_shipped_configs_name_serves_it_from_anywhere(tmp_path: Path, monkeypatch, capsys) -> None:
    """A user who installed the wheel has no configs/ folder: the README's command still works."""
    from raytorch.launch import config_file, main

    monkeypatch.chdir(tmp_path)
    shipped = (ROOT / "configs" / "quickstart.yaml").read_text()
    for given in ("quickstart", "quickstart.yaml", "configs/quickstart.yaml"):
        found = config_file(given)
        assert found is not None and found.read_text() == shipped, given
    (tmp_path / "quickstart.yaml").write_text("applications: []\n")  # a file of the user's wins
    assert config_file("quickstart.yaml") == Path("quickstart.yaml")
    assert config_file("nothing.yaml") is None
    assert main(["nothing.yaml"]) == 2
    refused = capsys.readouterr().err
    assert "No config file 'nothing.yaml' (shipped configs: audio_classifier, densenet" in refused
