"""The overflow queue: requests that find no capacity wait for their turn, fairly."""
