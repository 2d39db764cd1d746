"""cut_at_stops: the stop-string rule every generator's stream shares, on plain text pieces."""

from __future__ import annotations

from components.predictor import cut_at_stops


class Pieces:
    """An iterator over fixed pieces that records how many were taken and whether it was closed."""

    def __init__(self, pieces: list[str]):
        self.pieces = list(pieces)
        self.taken = 0
        self.closed = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.closed or self.taken == len(self.pieces):
            raise StopIteration
        self.taken += 1
        return self.pieces[self.taken - 1]

    def close(self) -> None:
        self.closed = True


def test_no_stops_passes_pieces_through():
    assert list(cut_at_stops(Pieces(["a", "bc", "d"]), [])) == ["a", "bc", "d"]
    assert list(cut_at_stops(Pieces(["a", "bc"]), [""])) == ["a", "bc"]  # an empty stop is no stop


def test_a_stop_across_pieces_is_cut_and_the_producer_closed():
    source = Pieces(["hel", "lo wo", "rld", "never"])
    assert "".join(cut_at_stops(source, ["o w"])) == "hell"
    assert source.taken == 2 and source.closed  # "rld" was never asked for


def test_the_earliest_stop_wins_and_a_stop_at_the_start_yields_nothing():
    assert "".join(cut_at_stops(Pieces(["abcdef"]), ["de", "bc"])) == "a"
    assert list(cut_at_stops(Pieces(["xy", "z"]), ["xy"])) == []


def test_a_possible_stop_start_is_held_then_released():
    pieces = list(cut_at_stops(Pieces(["a", "<", "/", "b", "c"]), ["</s>"]))
    assert pieces == ["a", "</b", "c"]  # "<" and "</" waited until "b" ruled "</s>" out
    assert list(cut_at_stops(Pieces(["a", "<"]), ["</s>"])) == ["a", "<"]  # the end releases the tail


def test_closing_the_stream_closes_the_producer():
    source = Pieces(["a", "b", "c"])
    stream = cut_at_stops(source, ["zz"])
    assert next(stream) == "a"
    stream.close()
    assert source.closed and source.taken == 1
