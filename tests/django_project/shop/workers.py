"""The shop's pgqueue workers: they use the Django ORM like any other code of the project."""

import pgqueue

from .models import Order


class SendReceipt(pgqueue.Worker, queue="emails", name="shop.SendReceipt"):
    def perform(self, job: pgqueue.Job) -> None:
        Order.objects.filter(pk=job.args["order_id"]).update(receipt_sent=True)
