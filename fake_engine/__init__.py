"""Fake llama.cpp engine binaries (llama-server, llama-tokenize) for the tests."""
