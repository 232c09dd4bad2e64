"""The MQTT edge's session teardown (``device/edge.py``): a session's loops end when it
ends, even one that lost its cancellation the way ``asyncio.wait_for`` loses it on Python
3.11 (a cancellation arriving as the acknowledgement it waits for completes). Before, the
fleet's probe could run on like that, keep its session open and hang ``Fleet.close``."""

from __future__ import annotations

import asyncio
from typing import Any

from device.edge import cancel_and_wait


async def test_a_loop_that_swallows_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    cancels = 0

    async def probe() -> None:  # as the fleet's probe, waiting for acknowledgements
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # what wait_for does when its future completes as it is cancelled
                raise

    async def fails() -> None:
        raise ConnectionError("the session's end, said elsewhere")

    loop_task, failed = asyncio.create_task(probe()), asyncio.create_task(fails())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(cancel_and_wait([loop_task, failed]), 5)
    assert loop_task.cancelled() and cancels == 2
    assert isinstance(failed.exception(), ConnectionError)  # retrieved: nothing said at exit

    # a single cancellation, as before, leaves it running
    cancels = 0
    again = asyncio.create_task(probe())
    await asyncio.sleep(0.05)
    again.cancel()
    await asyncio.sleep(0.1)
    assert not again.done() and cancels == 1
    await cancel_and_wait([again])
    assert again.cancelled()


async def test_what_a_task_raises_after_the_wait_was_cancelled_is_still_retrieved() -> None:
    """A session closed while its close is closing it: the wait for its tasks is cancelled,
    and the receiver ends afterwards with the connection's error. Nothing may say "Task
    exception was never retrieved" (a traceback in the log at a clean stop)."""
    import gc

    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        async def receive() -> None:  # as the fleet's, disconnected once it is cancelled
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                await asyncio.sleep(0.2)  # cancelled again meanwhile: a cancellation dropped
                raise ConnectionError("Disconnected during message iteration") from None

        receiver = asyncio.create_task(receive())
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(cancel_and_wait([receiver]))
        await asyncio.sleep(0.05)
        closing.cancel()
        await asyncio.wait([closing, receiver])
        assert closing.cancelled() and receiver.done() and not receiver.cancelled()
        del receiver, closing  # its exception not looked at here: only cancel_and_wait may
        gc.collect()
        await asyncio.sleep(0)
        assert unretrieved == []
    finally:
        loop.set_exception_handler(None)

