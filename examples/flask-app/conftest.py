# Makes `app` importable from the tests when pytest runs from the app root.
