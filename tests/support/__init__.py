"""Test support: a throw-away redis-server launcher and condition waits (no fixed sleeps)."""
