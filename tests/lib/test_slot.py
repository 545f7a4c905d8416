"""lib/slot: a client built at first use, once whatever the threads, swapped for a block by `using`."""

from __future__ import annotations

import threading

import pytest

from lib.slot import Slot


class Client:
    made = 0

    def __init__(self) -> None:
        Client.made += 1


@pytest.fixture(autouse=True)
def count():
    Client.made = 0


def test_nothing_is_built_until_asked_then_the_same_one_is_kept():
    slot = Slot(Client)
    assert Client.made == 0, "nothing at import or construction: the cold start pays nothing"
    first = slot.get()
    assert slot.get() is first and Client.made == 1


def test_threads_asking_at_once_get_one_client():
    slot = Slot(Client)
    barrier = threading.Barrier(8)
    got: list[Client] = []

    def ask() -> None:
        barrier.wait(5)
        got.append(slot.get())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(got) == 8 and len({id(c) for c in got}) == 1 and Client.made == 1


def test_using_installs_an_instance_for_every_thread_and_puts_the_previous_back():
    slot = Slot(Client)
    default = slot.get()
    mine = Client()
    with slot.using(mine) as installed:
        seen: list[Client] = []
        thread = threading.Thread(target=lambda: seen.append(slot.get()))
        thread.start()
        thread.join(5)
        assert installed is mine and slot.get() is mine and seen == [mine]
    assert slot.get() is default


def test_using_before_the_default_exists_leaves_it_unbuilt_and_restores_even_on_error():
    slot = Slot(Client)
    mine = Client()
    with pytest.raises(RuntimeError), slot.using(mine):
        raise RuntimeError("the test failed")
    assert Client.made == 1, "the default was not built by the swap"
    assert slot.get() is not mine and Client.made == 2
