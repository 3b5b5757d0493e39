"""The shop's django.tasks tasks (Django 6), run by pgqueue through the task backend."""

from django.tasks import task

from .models import Order


@task(queue_name="emails")
def send_receipt(order_id: int) -> None:
    Order.objects.filter(pk=order_id).update(receipt_sent=True)
