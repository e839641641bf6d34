"""Shipped model families, one folder each (data, networks, training app, runner registration): digits/."""
