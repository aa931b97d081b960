"""``pyro_loops.Call`` on its own: states, chaining, cancelling, awaiting, with no sockets at all."""

from __future__ import annotations

import asyncio

import pytest

from pyro_loops.call import Call, CallPendingError

from _adapter_support import errors_reported


def test_pending_call_refuses_to_give_a_result_instead_of_waiting():
    call = Call("add")
    assert not call.done()
    with pytest.raises(CallPendingError, match="never waits"):
        call.result()
    with pytest.raises(CallPendingError):
        call.exception()


def test_done_callback_added_after_completion_runs_at_once():
    call = Call()
    call.set_result(5)
    seen = []
    call.add_done_callback(lambda c: seen.append(c.result()))
    assert seen == [5]


def test_completion_is_final():
    call = Call()
    call.set_result(1)
    call.set_exception(ValueError("late"))
    call.set_result(2)
    assert call.result() == 1 and not call.cancel()


def test_cancel_runs_the_undo_hook_once_and_reaches_chained_calls():
    call = Call()
    undone = []
    call._on_cancel = undone.append
    chained = call.then(lambda value: value + 1)
    caught = call.iferror(lambda exc: "caught")
    assert call.cancel() and not call.cancel()
    assert undone == [call]
    assert chained.cancelled() and caught.cancelled()
    with pytest.raises(asyncio.CancelledError):
        call.result()


def test_then_passes_extra_arguments_and_failures_along():
    ok, bad = Call(), Call()
    doubled = ok.then(lambda value, factor: value * factor, 2)
    skipped = bad.then(lambda value: pytest.fail("not called on failure"))
    ok.set_result(21)
    bad.set_exception(KeyError("k"))
    assert doubled.result() == 42
    assert isinstance(skipped.exception(), KeyError)


def test_then_that_raises_reports_once_and_fails_the_chained_call():
    call = Call()
    with errors_reported() as seen:
        chained = call.then(lambda value: 1 / value)
        call.set_result(0)
        assert isinstance(chained.exception(), ZeroDivisionError)
        assert [type(exc) for exc, _ in seen] == [ZeroDivisionError]
        seen.clear()


def test_repeated_result_does_not_grow_the_traceback():
    call = Call()
    call.set_exception(ValueError("once"))
    depths = []
    for _ in range(3):
        try:
            call.result()
        except ValueError as exc:
            tb, depth = exc.__traceback__, 0
            while tb is not None:
                tb, depth = tb.tb_next, depth + 1
            depths.append(depth)
    assert depths[0] == depths[1] == depths[2]


def test_await_gets_the_result_and_task_cancel_cancels_the_call():
    async def scenario():
        done = Call()
        asyncio.get_running_loop().call_soon(done.set_result, "value")
        value = await done
        pending = Call()
        task = asyncio.ensure_future(_await(pending))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return value, pending.cancelled()

    assert asyncio.run(scenario()) == ("value", True)


async def _await(call: Call):
    return await call


def test_awaiting_task_resumes_in_the_event_that_completes_the_call():
    # No loop turn between the reply and the coroutine: a callback scheduled
    # before the reply was handled runs after the coroutine went on.
    order = []

    async def waiter(call):
        order.append(("resumed", await call))

    async def scenario():
        loop = asyncio.get_running_loop()
        call = Call()
        task = loop.create_task(waiter(call))
        await asyncio.sleep(0)  # the task now waits on the call

        def reply_arrives():  # as a reader callback of the loop completes a call
            loop.call_soon(order.append, "next loop turn")
            call.set_result(7)

        loop.call_soon(reply_arrives)
        await task
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert order == [("resumed", 7), "next loop turn"]


def test_wait_for_timeout_and_gather_over_calls():
    async def scenario():
        loop = asyncio.get_running_loop()
        never = Call("never answered")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_await(never), 0.01)
        one, two = Call(), Call()
        loop.call_soon(one.set_result, 1)
        loop.call_soon(two.set_result, 2)
        both = await asyncio.gather(_await(one), _await(two))
        failed = Call()
        loop.call_soon(failed.set_exception, ZeroDivisionError("remote"))
        with pytest.raises(ZeroDivisionError):
            await failed
        inside_task = Call()  # completed while another task runs: resumed on the next turn
        waiting = loop.create_task(_await(inside_task))
        await asyncio.sleep(0)
        inside_task.set_result("late")
        return never.cancelled(), both, await waiting

    assert asyncio.run(scenario()) == (True, [1, 2], "late")


@pytest.mark.skipif(not hasattr(asyncio, "timeout"), reason="asyncio.timeout is 3.11+")
def test_asyncio_timeout_around_an_await_raises_timeout_error_and_cancels_the_call():
    async def scenario():
        never = Call("never answered")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await never
        return never.cancelled()

    assert asyncio.run(scenario())


def test_then_chain_thousands_of_links_long_completes_without_recursion_error():
    with errors_reported() as seen:
        root = Call("root")
        last = root
        for _ in range(5000):
            last = last.then(lambda value: value + 1)
        root.set_result(0)
        assert last.result() == 5000
        assert not seen


def test_poll_written_as_recursive_then_completes_after_thousands_of_rounds():
    pending = []

    def poll(value):
        if value == 3000:
            return "finished"
        step = Call(f"round {value}")
        pending.append((step, value + 1))
        return step.then(poll)

    first = Call()
    outcome = first.then(poll)
    first.set_result(0)
    while pending:  # each round completes later, as replies do; every outer link waits on it
        step, value = pending.pop()
        step.set_result(value)
    assert outcome.result() == "finished"


def test_ten_thousand_unretrieved_exceptions_log_a_bounded_number_of_lines(caplog, monkeypatch):
    import gc
    import logging
    import re

    import pyro_loops
    from pyro_loops import _ratelog, call as call_module
    # a window of its own, so that the other tests' lines are not suppressed after this one
    monkeypatch.setattr(call_module, "_unretrieved_log", _ratelog.RateLimitedLog(logging.getLogger("pyro_loops")))
    calls = [Call(f"call {i}") for i in range(10000)]
    for call in calls:
        call.set_exception(ConnectionError("the server went away"))
    with caplog.at_level(logging.ERROR, logger="pyro_loops"):
        del calls, call
        gc.collect()
    lines = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"exception of call \d+ was never retrieved: ConnectionError: the server went away", lines[0])
    assert len(lines) <= pyro_loops.config.LOG_REPEAT_LIMIT + 2  # the limit, and the line saying so


def test_what_a_task_waits_on_for_a_call_wakes_every_callback_added_to_it():
    # asyncio's task adds one; anything else that was handed it may add more
    woken = []

    async def main():
        call = Call("add")
        waited = call.__await__().send(None)  # what the awaiting task would get
        waited.add_done_callback(lambda fut: woken.append(("first", fut.result())))
        waited.add_done_callback(lambda fut: woken.append(("second", fut.result())), context=None)
        call.set_result(3)
        await asyncio.sleep(0)  # callbacks not run at once are scheduled on the loop

    asyncio.run(main())
    assert sorted(woken) == [("first", 3), ("second", 3)]
