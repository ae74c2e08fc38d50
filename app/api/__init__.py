"""Thin HTTP routers: parse, authorize, call one domain function, map errors."""
