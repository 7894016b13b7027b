# lib/nodemain.py's set-up of the links other than plain UDP: the LoRa client, the NB-IoT
# transport, and their (and OSCORE's) counters in the log at the stop. A module of its own
# so a node on UDP never loads this code and its names: on the unix port .mpy code and its
# qstrs live on the heap, and qstrs are never freed (firmware/README.md, budgets).


# node.py's client for LoRa: compact frames on a radio, confirmed by the gateway's ack
def lora_client(cfg, board):
    import binascii

    import lorawire
    from transports import airtime, lora, lora_client

    lo = cfg["lora"]
    co = cfg["coap"]
    if hasattr(board, "lora_radio"):
        radio = board.lora_radio(lo)  # a real SX127x/SX126x on the board's SPI bus
    elif board.name != "unix":
        raise ValueError("transport lora: this board has no lora_radio()")
    else:
        from transports.lora_radio import EmulatedRadio

        radio = EmulatedRadio(cfg["gateway"]["host"], cfg["gateway"]["port"], lo["loss"],
                              cfg["seed"], lo["airtime"])
    key = binascii.unhexlify(lo["key"])
    budget = airtime.Budget(int(lo["budget_s"] * 1000000), int(lo["budget_window_s"] * 1000),
                            diff=board.clock.ticks_diff)
    up = lora.LoraUplink(radio, lorawire.FrameEncoder(cfg["type"], lo["short_id"], key),
                         {"freq_hz": lo["freq_hz"], "sf": lo["sf"],
                          "power_dbm": lo["power_dbm"]}, budget)
    return lora_client.Client(
        up, lo["short_id"], key, board.clock, board.rng, confirm=lo["confirm"],
        rx_delay_ms=int(lo["rx_delay_s"] * 1000), rx_window_ms=lo["rx_window_ms"],
        ack_timeout_ms=int(co["ack_timeout_s"] * 1000),
        ack_random_factor=co["ack_random_factor"], max_retransmit=co["max_retransmit"],
        now=board.time)


# The datagram transport on NB-IoT (a BG95 on the board's UART).
def nbiot(cfg, board):
    from transports.nbiot import Modem, NbiotTransport

    nb = cfg["nbiot"]
    if hasattr(board, "uart"):
        uart = board.uart(nb["uart"], nb["baudrate"])
    elif board.name == "unix":
        # a serial device or the pty of tools' emulated modem (boards/unix_uart.py; set up
        # here, not by the unix board, so its names are on the heap of NB-IoT nodes only)
        from boards.unix_uart import PtyUart

        uart = PtyUart(nb["uart"])
    else:
        raise ValueError("transport nbiot: this board has no uart()")
    # the modem registers and opens its socket at the first send (a failure there is a
    # lost transmission for the CoAP client, retried like any other)
    return NbiotTransport(Modem(uart), cfg["gateway"]["host"], cfg["gateway"]["port"],
                          nb["apn"])


# The OSCORE and LoRa counters, logged before the `stop` line.
def log_stats(node):
    cfg = node.cfg
    board = node.board
    dev = node.dev
    client = node.client
    if cfg["oscore"]:
        tr = client.transport
        board.log("I %s oscore protected=%d unprotected=%d dropped=%d echoes=%d" % (
            dev, tr.ctx.protected, tr.ctx.unprotected, tr.dropped, tr.echoes))
    if cfg["transport"] == "lora":
        board.log("I %s lora acked=%d deferred=%d refused=%d" % (
            dev, client.acked, client.deferred, client.refused))
