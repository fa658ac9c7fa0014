"""A real `vitkit` server process whose model is slow or failing on purpose, for the timeout, queue and 500 tests.

    python tests/slow_server.py CHECKPOINT --port PORT

A mid-gray image takes 0.3 s, a white image 3 s (beyond the 1 s request timeout), a black image raises an error
whose text must never reach the client. Batches of one, a queue of two images.
"""
import argparse
import time

from vitkit.engine.predict import Classifier
from vitkit.serve import ServeSettings
from vitkit.serve import app as serve_app


class SlowClassifier(Classifier):
    def logits(self, images, batch_size=256):
        mean = float(images.float().mean())
        if mean < 5:
            raise RuntimeError("SECRET-INTERNAL-DETAIL in /srv/private/path")
        time.sleep(3.0 if mean > 250 else 0.3)
        return super().logits(images, batch_size)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve_app.load_classifier = lambda path, runtime, **kw: SlowClassifier(path, **kw)  # what serve() builds
    settings = ServeSettings(port=args.port, max_batch=1, max_queue=2, max_images=2, timeout_s=1.0)
    serve_app.serve(args.checkpoint, settings, device="cpu", precision="fp32")


if __name__ == "__main__":
    main()
