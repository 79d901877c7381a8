"""Transports: memory (in-process), websocket (aiohttp), ray (actors)."""
