"""Bridges to other frameworks' callback systems. Each module needs its framework's extra and says which:
``rlm_toolkit.integrations.langchain`` (``pip install 'rlm_toolkit[langchain]'``)."""
