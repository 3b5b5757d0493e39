"""``manage.py place_order EMAIL [--fail] [--task]``: an order and its receipt job in one atomic block."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from pgqueue.contrib.django import enqueue
from tests.django_project.shop.models import Order
from tests.django_project.shop.workers import SendReceipt


class Command(BaseCommand):
    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("--fail", action="store_true", help="raise inside the atomic block")
        parser.add_argument("--task", action="store_true", help="enqueue through django.tasks")

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            order = Order.objects.create(email=options["email"])
            if options["task"]:
                from tests.django_project.shop.tasks import send_receipt

                job_id = send_receipt.enqueue(order.pk).id
            else:
                job_id = enqueue(SendReceipt.new({"order_id": order.pk})).id
            if options["fail"]:
                raise CommandError("order refused")
        self.stdout.write(f"order {order.pk} job {job_id}")
