"""A TCP proxy on 127.0.0.1 that holds every chunk back a fixed delay in each direction."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from kit.testbed.ports import free_port


class DelayProxy:
    """127.0.0.1:<port> -> target, every chunk held back `delay_s` in each direction (order kept).

    Written by hand because netem is missing from this kernel and no small library does this;
    it runs on its own asyncio loop in a thread and closes everything on stop().
    """

    def __init__(self, target: tuple[str, int], delay_s: float):
        self.target, self.delay_s = target, delay_s
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None

    async def _pipe(self, reader, writer):
        q: asyncio.Queue = asyncio.Queue()

        async def pump_in():
            while True:
                data = await reader.read(65536)
                await q.put((self.loop.time() + self.delay_s, data))
                if not data:
                    return

        async def pump_out():
            while True:
                due, data = await q.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if not data:
                    with contextlib.suppress(Exception):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        await asyncio.gather(pump_in(), pump_out(), return_exceptions=True)

    async def _handle(self, reader, writer):
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer), return_exceptions=True)
        for w in (writer, up_w):
            with contextlib.suppress(Exception):
                w.close()

    def start(self):
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop)
        self.server = fut.result(timeout=10)
        return self

    def stop(self):
        async def shutdown():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            # Let the cancellations finish here: a task destroyed while pending logs a traceback
            # from the garbage collector at some random later moment.
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()
