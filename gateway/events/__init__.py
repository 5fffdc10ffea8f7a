"""The events feed's listeners (R-X1): the host's callbacks (``dispatcher``) and signed
webhooks (``webhooks``)."""
