"""The harness itself: the server it starts answers, and as sbx."""


def test_the_server_answers_with_the_admin_token(admin):
    info = admin.get("/v1/info")
    assert info.status_code == 200, info.text
    assert info.json()["runtime"]["name"] == "youki"


def test_a_call_without_a_token_is_refused(server):
    with server.client(token="not-a-token") as stranger:
        assert stranger.get("/v1/sandboxes").status_code == 401
