"""attnflow streaming side: Faust app, topics, codec, agents, web views and the CLI.

Glue only: numerical work lives in ``models``.
"""
