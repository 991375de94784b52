"""The example service our users deploy: a small Flask app with a health endpoint."""
import os

from flask import Flask, jsonify

app = Flask(__name__)

VERSION = os.environ.get("APP_VERSION", "dev")


@app.get("/")
def index():
    return jsonify(message="Hello from flask-app", version=VERSION)


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))
