"""The online endpoint: a Ray Serve application (FastAPI ingress + batched model deployment) over a registered or
stored SgMg checkpoint, its command (``sgmg serve``) and a small HTTP client that needs neither Ray nor torch."""
