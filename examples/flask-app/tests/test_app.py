from app import app


def client():
    app.config.update(TESTING=True)
    return app.test_client()


def test_index_greets():
    resp = client().get("/")
    assert resp.status_code == 200
    assert resp.get_json()["message"] == "Hello from flask-app"


def test_health_endpoint():
    resp = client().get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}
