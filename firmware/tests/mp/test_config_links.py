# The heap side of the node config and start-up under the real MicroPython
# (firmware/README.md, budgets): a UDP node's config never loads lib/linkconfig.py (the
# lora, nbiot and oscore sections' names), a config with one of those sections is checked
# by it (defaults filled, errors named) and does not keep it loaded; nodemain.build()
# drops lib/nodebuild.py once the node is built.
import sys

import mptest
import nodeconfig
from mptest import eq

BASE = {"device_id": "env-0001", "type": "env", "gateway": {"host": "127.0.0.1"},
        "state_dir": "/tmp"}


def _cfg(**kw):
    d = dict(BASE)
    d.update(kw)
    return d


def test_udp_config_does_not_load_the_link_sections():
    sys.modules.pop("linkconfig", None)
    c = nodeconfig.check(_cfg())
    eq("linkconfig" in sys.modules, False)
    eq((c["transport"], c["oscore"], c["lora"], c["nbiot"]), ("udp", {}, {}, {}))
    eq(c["gateway"], {"host": "127.0.0.1", "port": 5683})
    eq(c["coap"], {"ack_timeout_s": 2.0, "ack_random_factor": 1.5, "max_retransmit": 4})


def test_link_sections_checked_and_completed_then_dropped():
    c = nodeconfig.check(_cfg(transport="lora", lora={"short_id": 257, "key": "00" * 16}))
    eq("linkconfig" in sys.modules, False)
    lo = c["lora"]
    eq((lo["sf"], lo["freq_hz"], lo["confirm"], lo["rx_delay_s"], lo["airtime"]),
       (10, 923200000, True, 1.0, True))
    c = nodeconfig.check(_cfg(transport="nbiot", nbiot={"uart": "/dev/pts/3"}))
    eq(c["nbiot"], {"uart": "/dev/pts/3", "apn": "", "baudrate": 115200})
    c = nodeconfig.check(_cfg(oscore={"key": "AB" * 16, "short_id": 17}))
    eq(c["oscore"], {"key": "AB" * 16, "short_id": 17})
    eq("linkconfig" in sys.modules, False)
    for kw, msg in (({"oscore": {"key": "00" * 16}}, "oscore.short_id: required"),
                    ({"oscore": {"key": "00" * 15, "short_id": 1}}, "oscore.key: must be 32"),
                    ({"transport": "lora", "lora": {"short_id": 1, "key": "00" * 16},
                      "oscore": {"key": "00" * 16, "short_id": 1}}, "oscore: not with"),
                    ({"transport": "nbiot", "nbiot": {"uart": "u", "baud": 9600}},
                     "nbiot.baud: unknown key")):
        try:
            nodeconfig.check(_cfg(**kw))
        except nodeconfig.ConfigError as e:
            eq(str(e).startswith(msg), True, str(e))
        else:
            raise AssertionError("accepted %r" % (kw,))


def test_build_drops_its_code():
    import nodemain

    # a bad scenario key: the unix board refuses it inside nodebuild.build (exit code 2)
    sys.modules.pop("nodebuild", None)
    eq(nodemain.build(nodeconfig.check(_cfg(scenario={"no_such_key": 1}))), 2)
    eq("nodebuild" in sys.modules, False)


mptest.run(globals())
