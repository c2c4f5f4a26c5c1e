"""Invoices over HTTP: one per paid order, as JSON and as a PDF, and a merchant's list (by order)."""

from aiohttp import web

from actors.invoice_pdf import invoice_pdf
from edge.cache import MISSING, LruCache
from edge.errors import not_found
from edge.http import merchant_principal, parse_limit, read_page, respond
from engine import views
from engine.queries import GetInvoice, ListInvoices
from engine.records import Invoice, Merchant

# Rendered PDFs by invoice id (an invoice never changes), a few kB each.
INVOICE_PDFS = web.AppKey("invoice_pdfs", LruCache)
PDFS_CACHED = 256


def install(app: web.Application) -> None:
    app[INVOICE_PDFS] = LruCache(PDFS_CACHED)


async def get_invoice(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    invoice = await _invoice(request, merchant, request.match_info["id"])
    return respond(request, views.invoice(invoice, request.app["settings"].public_url))


async def get_invoice_pdf(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    invoice = await _invoice(request, merchant, request.match_info["id"])
    cache = request.app[INVOICE_PDFS]
    pdf = cache.get(invoice.id)
    if pdf is MISSING:
        pdf = invoice_pdf(invoice)
        cache.put(invoice.id, pdf)
    return web.Response(body=pdf, content_type="application/pdf",
                        headers={"Content-Disposition": f'inline; filename="invoice-{invoice.number}.pdf"'})


async def list_invoices(request: web.Request) -> web.Response:
    merchant = await merchant_principal(request)
    query = request.query
    read = ListInvoices(merchant_id=merchant.id, order_id=query.get("order_id", "")[:64], limit=parse_limit(query),
                        starting_after=query.get("starting_after", "")[:64])
    answer = await read_page(request, merchant.id, read, lambda invoice_id: GetInvoice(merchant.id, invoice_id))
    public_url = request.app["settings"].public_url
    return respond(request, views.InvoiceList("list", [views.invoice(record, public_url) for record in answer.records],
                                              answer.has_more))


async def _invoice(request: web.Request, merchant: Merchant, invoice_id: str) -> Invoice:
    invoice = (await request.app["gateway"].read(merchant.id, GetInvoice(merchant.id, invoice_id))).record
    if invoice is None:
        raise not_found("invoice", invoice_id)
    return invoice
