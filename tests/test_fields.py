"""The one check behind every number field of the pages (ui/fields.py): the reason a value is refused."""

from __future__ import annotations

from ui.fields import between, number_text, range_problem


def test_the_message_names_the_range_and_the_value():
    assert range_problem("K", 10, 1, 64) is None
    assert range_problem("K", 0, 1, 64) == "K must be between 1 and 64 (got 0)."
    assert range_problem("K", 2.5, 1, 64, integer=True) == "K must be a whole number (got 2.5)."
    assert range_problem("K", 65, 1, 64, integer=True) == "K must be a whole number between 1 and 64 (got 65)."
    assert range_problem("K", None, 1, 64) == "K: enter a number."
    assert range_problem("Seed", 2**31, 0, 2**31 - 1) == "Seed must be between 0 and 2,147,483,647 (got 2,147,483,648)."


def test_open_ends_are_said_as_intervals():
    assert range_problem("Learning rate", 0, 0, 1, low_open=True) == "Learning rate must be in (0, 1] (got 0)."
    assert range_problem("β2", 1, 0, 1, high_open=True) == "β2 must be in [0, 1) (got 1)."
    assert range_problem("β2", 0.999, 0, 1, high_open=True) is None
    assert (
        between("p", 3, 2000, note=" on this page")(2003) == "p must be between 3 and 2,000 on this page (got 2,003)."
    )


def test_the_tighter_server_limit_is_named_with_its_file(monkeypatch, tmp_path):
    limits = tmp_path / "limits.toml"
    limits.write_text("samples = 20\n")
    monkeypatch.setenv("LAB_LIMITS_FILE", str(limits))
    assert range_problem("Samples K", 20, 1, 64, limit="samples") is None
    assert "Samples K: 21 is over this server's limit of 20 (samples in limits.toml)" in range_problem(
        "Samples K", 21, 1, 64, limit="samples"
    )
    limits.write_text("samples = 100\n")  # the engine's bound is the tighter one now
    assert range_problem("Samples K", 65, 1, 64, limit="samples") == "Samples K must be between 1 and 64 (got 65)."


def test_numbers_read_as_people_write_them():
    assert [number_text(x) for x in (2, 2000, 0.05, 2.5e-5, 1e6)] == ["2", "2,000", "0.05", "2.5e-05", "1,000,000"]
