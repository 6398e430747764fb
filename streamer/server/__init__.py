"""The server: HTTP and websocket on one port, WebRTC viewers, the session registry and /metrics."""
