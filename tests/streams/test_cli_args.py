"""The CLI hands every argument after ``market-sim`` to the simulator, its own ``--help`` included."""
import pytest

from streams import cli


@pytest.mark.parametrize("argv", [["market-sim", "--help"], ["market-sim", "--", "--help"]])
def test_market_sim_options_reach_the_simulator(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 0
    assert "--campaigns" in capsys.readouterr().out  # the simulator's usage, not the CLI's


def test_other_commands_still_refuse_unknown_options(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["topics", "--no-such-option"])
    assert done.value.code == 2 and "unrecognized arguments: --no-such-option" in capsys.readouterr().err
