"""The server serves the contract documents at stable paths, byte for byte as docs/ holds them."""

import pytest
import yaml

from tests.contract.documents import ASYNCAPI_PATH, OPENAPI_PATH


@pytest.mark.gen_test(timeout=20)
async def test_both_documents_are_served(http_client, base_url):
    for path in (ASYNCAPI_PATH, OPENAPI_PATH):
        response = await http_client.fetch(f"{base_url}/{path.name}")
        assert response.headers["Content-Type"] == "application/yaml"
        assert response.body == path.read_bytes()
        assert yaml.safe_load(response.body)["info"]["version"]


@pytest.mark.gen_test(timeout=20)
async def test_nothing_else_of_docs_is_served(http_client, base_url):
    response = await http_client.fetch(f"{base_url}/protocol.md", raise_error=False)
    assert response.code == 404
