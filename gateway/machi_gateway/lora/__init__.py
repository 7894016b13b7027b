"""The LoRa compact frame (docs/protocol-lora.md): profiles and the decoder that the
LoRa-family ingress adapters (packet forwarder, serial modem, ChirpStack) call.

``frame.decode`` is contract C6; ``frame.encode`` is the same format written by the
gateway side (tests, vectors, emulators); ``profiles`` is the table shared with the
firmware (``firmware/lib/lorawire.py``)."""
