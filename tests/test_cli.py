import torchtpu
from torchtpu.cli import main


def test_info_prints_versions_and_device(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torchtpu {torchtpu.__version__}" in out
    assert "torchtpu runs on: " in out
