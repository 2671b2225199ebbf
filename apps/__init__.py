"""Thin apps over the library: the `vistaste` command line, `make demo` and the HTML gallery. They may
import every other package; nothing imports them."""
