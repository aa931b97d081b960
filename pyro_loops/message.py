"""Pyro4's ``message`` module: the message type and flag numbers of the wire protocol.

The framing itself lives in ``_wire`` (sans-IO); this module only gives it the
names Pyro4 programs import (the protocol notes, section 1, give the layout).
"""

from ._wire import (FLAGS_BATCH, FLAGS_COMPRESSED, FLAGS_EXCEPTION, FLAGS_ITEMSTREAMRESULT, FLAGS_KEEPSERIALIZED,
                    FLAGS_META_ON_CONNECT, FLAGS_ONEWAY, MSG_CONNECT, MSG_CONNECTFAIL, MSG_CONNECTOK, MSG_INVOKE,
                    MSG_PING, MSG_RESULT, Message)

__all__ = ["FLAGS_BATCH", "FLAGS_COMPRESSED", "FLAGS_EXCEPTION", "FLAGS_ITEMSTREAMRESULT", "FLAGS_KEEPSERIALIZED",
           "FLAGS_META_ON_CONNECT", "FLAGS_ONEWAY", "MSG_CONNECT", "MSG_CONNECTFAIL", "MSG_CONNECTOK", "MSG_INVOKE",
           "MSG_PING", "MSG_RESULT", "Message"]
